"""The coordinator: settings, storage, scheduler, REST API, dashboard and CLI."""
