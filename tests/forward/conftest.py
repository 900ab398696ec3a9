from tests.image_stack import image_bucket, make_stack, stack, store_kind

__all__ = ["image_bucket", "make_stack", "stack", "store_kind"]
