from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the tasks (the allocation statement defers deliver_lead by name).
        from delivery import tasks  # noqa: F401
