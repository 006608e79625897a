from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the enqueue to allocation.signals.deliveries_created, and registers the task.
        from delivery import tasks  # noqa: F401
