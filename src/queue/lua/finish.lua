-- An attempt ended. KEYS: job, history, stream, dead. ARGV: group, entry,
-- worker, host, now, outcome (ok|fail|handback), error, log tail.
-- Returns 'succeeded' | 'already' | 'lost' | 'queued' | 'failed' | 'dead'.
local group, entry, worker, host, now, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local f = redis.call('HMGET', KEYS[1], 'id', 'state', 'worker', 'entry', 'attempts', 'max_attempts')
local id, state, attempt = f[1], f[2], tonumber(f[5])
if state == 'succeeded' then
  ack(group, entry)
  return 'already'
end
if outcome == 'ok' then
  -- The work is done, whoever holds the lease now: record it once.
  redis.call('HSET', KEYS[1], 'state', 'succeeded', 'worker', worker, 'host', host, 'finished_at', now,
    'updated_at', now, 'log_tail', ARGV[8])
  redis.call('LREM', KEYS[4], 0, id)
  transition('succeeded', now, host, worker, attempt, nil)
  ack(group, entry)
  return 'succeeded'
end
if state ~= 'running' or f[3] ~= worker or f[4] ~= entry then
  return 'lost'
end
redis.call('HSET', KEYS[1], 'updated_at', now, 'log_tail', ARGV[8])
if outcome == 'handback' then
  redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', attempt - 1)
  transition('queued', now, host, worker, attempt, 'handed back: the worker is shutting down')
  enqueue(id)
  ack(group, entry)
  return 'queued'
end
redis.call('HSET', KEYS[1], 'error', ARGV[7])
transition('failed', now, host, worker, attempt, ARGV[7])
if attempt >= tonumber(f[6]) then
  to_dead(id, now, host, worker, attempt, 'gave up after ' .. f[6] .. ' attempts')
  ack(group, entry)
  return 'dead'
end
redis.call('HSET', KEYS[1], 'state', 'failed')
enqueue(id)
ack(group, entry)
return 'failed'
