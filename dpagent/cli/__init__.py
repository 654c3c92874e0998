"""Click commands, one module per verb group. Only this package exits the process."""
