# A control client that frames messages exactly as einhorn's Ruby transport does:
# Psych's YAML.dump of a hash, "%" -> "%25" and "\n" -> "%0A", one line each; and
# reads replies the same way back. Used by tests/integration/einhorn_wire_ruby.rs
# to prove that einhorn's own client code and einhornsh can talk to
# einhyrningsins.
#
# usage: ruby einhorn_client.rb SOCKET COMMAND [ARGS...]
#   COMMAND "worker:ack" takes the pid as its argument.
#   COMMAND "worker" runs as a worker that acks itself, as Einhorn::Worker.ack!
#   does, when it gets SIGUSR1 (and exits on SIGUSR2 or SIGTERM).
# Prints each reply's message on its own line(s), prefixed by "wait:" or "final:".
require "socket"
require "yaml"

def frame(hash)
  YAML.dump(hash).gsub(/%|\n/, "%" => "%25", "\n" => "%0A") + "\n"
end

def unframe(line)
  YAML.load(line.chomp.gsub(/%0A|%25/, "%0A" => "\n", "%25" => "%"))
end

path, command, *args = ARGV
if command == "worker"
  pending = 0
  trap("USR1") { pending += 1 }
  trap("USR2") { exit 0 }
  trap("TERM") { exit 0 }
  # Ready for SIGUSR1 (before the trap it would kill us).
  File.write(File.join(ENV.fetch("READY_DIR"), "ready-#{Process.pid}"), "") if ENV["READY_DIR"]
  loop do
    sleep 0.02
    next if pending.zero?
    pending -= 1
    s = UNIXSocket.new(ENV.fetch("EINHORN_SOCK_PATH", path))
    s.write(frame("command" => "worker:ack", "pid" => Process.pid))
    $stderr.puts(s.read == "" ? "einhorn_client.rb: acked, master closed" : "unexpected reply")
    s.close
  end
end
sock = UNIXSocket.new(path)
if command == "worker:ack"
  sock.write(frame("command" => "worker:ack", "pid" => Integer(args[0])))
  # The master sends no reply and closes the connection.
  puts(sock.read == "" ? "closed" : "unexpected reply")
  exit 0
end
sock.write(frame("id" => 1, "command" => command, "args" => args))
loop do
  line = sock.readline
  reply = unframe(line)
  raise "reply is not a hash: #{reply.inspect}" unless reply.is_a?(Hash)
  raise "request_id #{reply['request_id'].inspect}" unless reply["request_id"] == 1
  if reply["wait"]
    puts "wait: #{reply['message']}"
  else
    puts "final#{reply['error'] ? ' error' : ''}: #{reply['message']}"
    break
  end
end
