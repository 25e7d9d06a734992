"""REST API v1 of the coordinator (OpenAPI at `/docs`).

Routes (bodies in `service.api.schemas`; mutating ones need `Authorization: Bearer <token>` when
`ESNAC_API_TOKEN` is set, else 401):

- `GET  /healthz` -> {"status": "ok"}; `GET /readyz` -> 200 {"database": "ok", "ray": "ok"} or 503.
- `GET  /v1/teachers/archs` -> list[str] (the zoo's architectures).
- `POST /v1/teachers` (multipart: arch, num_classes, dataset, [accuracy], file `weights`
  safetensors) -> 201 TeacherPublic; 422 bad weights/fields, 413 too large.
- `POST /v1/teachers/train` (TeacherTrain) -> 202 TeacherPublic (status "training").
- `GET  /v1/teachers` -> list[TeacherPublic]; `GET /v1/teachers/{id}` -> TeacherPublic;
  `GET /v1/teachers/{id}/weights` -> safetensors bytes.
- `POST /v1/jobs` (JobCreate) -> 201 JobPublic; `GET /v1/jobs?status=&limit=&cursor=` -> JobPage;
  `GET /v1/jobs/{id}` -> JobPublic; `POST /v1/jobs/{id}/cancel` -> JobPublic.
- `GET  /v1/jobs/{id}/trials?status=&updated_after=&limit=&cursor=` -> TrialPage.
- `GET  /v1/trials/{id}` -> TrialPublic; `GET /v1/trials/{id}/weights` -> safetensors (the fully
  trained weights for a top-k student, else the search weights; header `X-ESNAC-Weights:
  final|search`); `GET /v1/trials/{id}/onnx` -> ONNX (top-k students after full training).
"""
