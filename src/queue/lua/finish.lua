-- An attempt ended. KEYS: job, history, stream, dead, delayed. ARGV: group,
-- entry, worker, host, now, outcome (ok|fail|handback), error, log tail,
-- first retry delay (ms), now (ms).
-- Returns 'succeeded' | 'already' | 'lost' | 'queued' | 'failed' | 'dead' |
-- 'missing' (the job's record is gone).
local group, entry, worker, host, now, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local f = redis.call('HMGET', KEYS[1], 'id', 'state', 'worker', 'entry', 'attempts', 'max_attempts')
local id, state, attempt = f[1], f[2], tonumber(f[5])
if not id then
  ack(group, entry)
  return 'missing'
end
if state == 'succeeded' then
  ack(group, entry)
  return 'already'
end
if outcome == 'ok' and f[4] == entry then
  -- The work is done, whoever holds the lease on this delivery now:
  -- record it once. (After a newer delivery the job is another attempt's,
  -- or even another job's if the server lost its data and reused the id.)
  redis.call('HSET', KEYS[1], 'state', 'succeeded', 'worker', worker, 'host', host, 'finished_at', now,
    'updated_at', now, 'log_tail', ARGV[8])
  redis.call('LREM', KEYS[4], 0, id)
  transition('succeeded', now, host, worker, attempt, nil)
  ack(group, entry)
  return 'succeeded'
end
if not held_by(state, f[3], f[4], worker, entry) then
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
-- The next attempt waits, twice as long after each failure (at most an
-- hour), so a passing outage does not use up every attempt at once.
local delay = math.min(tonumber(ARGV[9]) * 2 ^ (attempt - 1), 3600000)
local at = tonumber(ARGV[10]) + delay
redis.call('HSET', KEYS[1], 'state', 'failed', 'retry_at', string.format('%d', at))
redis.call('ZADD', KEYS[5], at, id)
ack(group, entry)
return 'failed'
