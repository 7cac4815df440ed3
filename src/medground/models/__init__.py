"""Model families, the model directory format and the loader."""
