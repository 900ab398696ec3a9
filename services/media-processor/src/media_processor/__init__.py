"""Media processor: sanitizes uploaded images into immutable derivatives (original, preview, thumbnail)."""
