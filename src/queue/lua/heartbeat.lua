-- Renews a worker's lease on its delivery. KEYS: job, history (unused),
-- stream. ARGV: group, entry, worker, now, log tail. Returns 0 when the
-- job is no longer this worker's (its lease expired and another worker
-- took it, or it finished elsewhere): the worker must stop it.
local group, entry, worker = ARGV[1], ARGV[2], ARGV[3]
local f = redis.call('HMGET', KEYS[1], 'state', 'worker', 'entry')
if not held_by(f[1], f[2], f[3], worker, entry) then return 0 end
redis.call('XCLAIM', KEYS[3], group, worker, 0, entry, 'JUSTID')
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[4], 'log_tail', ARGV[5])
return 1
