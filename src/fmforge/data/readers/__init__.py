"""One module per family of source formats; ``fmforge.data.sources`` maps each
``data.sources[].type`` to its reader and is the entry point the stage uses."""
