"""dfguard: scores uploaded videos and images for face manipulation and decides allow / review / flag."""

__version__ = "0.1.0"
