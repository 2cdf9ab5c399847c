# A Rack app for puma (examples/configs/puma.toml): `pid=<pid> version=<APP_VERSION>`.
run lambda { |_env|
  body = "pid=#{Process.pid} version=#{ENV.fetch('APP_VERSION', '1')}\n"
  [200, { 'Content-Type' => 'text/plain', 'Content-Length' => body.bytesize.to_s }, [body]]
}
