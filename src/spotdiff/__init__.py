"""spotdiff: find the differences between two images and box every changed object in each image."""

__version__ = "0.1.0"
