"""The shapes world: captioned shape images, an analyser that reads them back, the `demo` model's recipe and score."""
