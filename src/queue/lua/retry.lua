-- `queue retry`: a dead job goes back to the queue with its attempts
-- reset. KEYS: job, history, stream, dead. ARGV: id, now, host. Returns
-- the job's state before ('' when there is no such job).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state ~= 'dead' then return state end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'updated_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'finished_at')
redis.call('LREM', KEYS[4], 0, ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
transition('queued', ARGV[2], ARGV[3], nil, nil, 'retried by hand')
enqueue(ARGV[1])
return state
