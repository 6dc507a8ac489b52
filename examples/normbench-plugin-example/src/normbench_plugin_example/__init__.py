"""An example normbench plugin package."""
