"""ctdose: measure how CT dose, scanner and reconstruction change radiomic and deep features.

The package holds all logic; the scripts in the repository's top-level folders are thin
command-line wrappers around it. See README.md and DESIGN.md for the pipeline.
"""

__version__ = "0.1.0"
