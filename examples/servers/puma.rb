# puma as an einhyrningsins worker (examples/configs/puma.toml): single mode
# (the master is the cluster), sockets from systemd's socket protocol (puma
# adopts LISTEN_FDS sockets and binds nothing else), READY=1 for ack = "notify".
bind_to_activated_sockets 'only'
threads 4, 4
# Below the pool's stop_timeout (5s), so puma closes its own connections
# instead of being SIGKILLed with requests in hand.
force_shutdown_after 3
