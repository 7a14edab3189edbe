-- A worker took a delivery (new, or claimed after a lease expired).
-- KEYS: job, history, stream, dead. ARGV: group, entry, worker, host, now.
-- Returns {'run', attempt} | {'skip', state} | {'dead', error}.
local group, entry, worker, host, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local f = redis.call('HMGET', KEYS[1], 'id', 'state', 'entry', 'attempts', 'max_attempts', 'worker', 'host')
local id, state = f[1], f[2]
-- This worker's own delivery, claimed back after a missed heartbeat: it
-- runs here already.
if held_by(state, f[6], f[3], worker, entry) then
  return {'skip', 'mine'}
end
-- A done job, or a delivery superseded by a newer one, is acknowledged
-- and not run: this is what keeps a second delivery from running it twice.
if not state or f[3] ~= entry or state == 'succeeded' or state == 'dead' then
  ack(group, entry)
  return {'skip', state or 'missing'}
end
local attempt = tonumber(f[4]) + 1
if state == 'running' then
  local why = 'lease expired: worker ' .. (f[6] or '?') .. ' stopped heartbeating'
  redis.call('HSET', KEYS[1], 'error', why)
  transition('failed', now, f[7] or host, f[6], attempt - 1, why)
end
if attempt > tonumber(f[5]) then
  local why = 'gave up after ' .. f[5] .. ' attempts; last error: ' .. (redis.call('HGET', KEYS[1], 'error') or '?')
  to_dead(id, now, host, worker, nil, why)
  ack(group, entry)
  return {'dead', why}
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempts', attempt, 'worker', worker, 'host', host,
  'started_at', now, 'updated_at', now, 'heartbeat_at', now, 'log_tail', '')
transition('running', now, host, worker, attempt, nil)
return {'run', tostring(attempt)}
