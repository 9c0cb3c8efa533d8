"""The service's routes, one ``APIRouter`` per area; ``create_app`` includes them."""
