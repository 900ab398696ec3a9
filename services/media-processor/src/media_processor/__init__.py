"""Media processor: sanitizes uploaded images into immutable derivatives (original, preview, thumbnail).

``transforms.sanitize`` is the pure image work; ``pool.MediaProcessor`` runs it in worker processes with
a time and a memory bound per job (``await processor.process(data, content_type)``).
"""

from media_processor.pool import MediaProcessor, PoolSettings
from media_processor.transforms import ImageLimits, Reason, Rejected, Sanitized, Variant

__all__ = ["ImageLimits", "MediaProcessor", "PoolSettings", "Reason", "Rejected", "Sanitized", "Variant"]
