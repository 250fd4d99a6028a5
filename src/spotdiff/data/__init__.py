"""Datasets: sources, inpainting, training pairs, test sets."""
