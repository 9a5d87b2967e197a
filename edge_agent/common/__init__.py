"""What several stages read and none owns: exit statuses, the typed seams between the stages,
file hashing and directory fsync, and the process's resource usage. Nothing here imports
another edge_agent package, so every package may import it."""
