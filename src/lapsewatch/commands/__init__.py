"""Sub-commands of ``lapsewatch``, one module per group; ``cli`` assembles them."""
