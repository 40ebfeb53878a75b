-- One atomic step of a replica's credit lease for one payer (plan, holder).
-- KEYS[1] the payer's shared balance (hash: fetched, sub, mark, at, fetching, settled)
-- KEYS[2] the payer's leases (hash: replica id -> "credits:expires_ms")
-- KEYS[3] the store's epoch (when it was born: leases before it are unknown)
-- ARGV: 1 replica id, 2 report, 3 reserved, 4 amount, 5 extra, 6 fetched ("no", "yes",
-- "failed"), 7 balance, 8 is_subscriber (1/0), 9 mark, 10 force_fetch (1/0),
-- 11 balance ttl ms, 12 recheck ms, 13 stale max age ms (-1: never), 14 lease ttl ms,
-- 15 how long the keys outlive their last use, ms.
-- Answers {status, held, available or mark}; amounts are whole credits (below 2^53).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local report = tonumber(ARGV[2])
local reserved = tonumber(ARGV[3])
local amount = tonumber(ARGV[4])
local extra = tonumber(ARGV[5])
local mode = ARGV[6]
local lease_ttl = tonumber(ARGV[14])
local keep = tonumber(ARGV[15])

local function fmt(n)
  return string.format('%.0f', n)
end

-- A store without its epoch lost its data (a restart, a flush): leases granted before
-- are still served by their replicas and counted nowhere, so none is granted until
-- they have all expired. (A replica that connects sets the epoch first, with no wait.)
local born = tonumber(redis.call('GET', KEYS[3]) or '')
if not born then
  born = now + lease_ttl
  redis.call('SET', KEYS[3], fmt(born))
end
if now < born then
  return {'recovering', '0', '0'}
end

-- The others' live leases; an expired one (a replica that died) is dropped.
local others, n, own = 0, 0, 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local c, u = string.match(all[i + 1], '^(%d+):(%d+)$')
  local credits, expires = tonumber(c), tonumber(u)
  if not credits or expires <= now then
    redis.call('HDEL', KEYS[2], all[i])
  elseif all[i] == id then
    own = credits
  else
    others = others + credits
    n = n + 1
  end
end

local function put_lease(held)
  if held > 0 then
    redis.call('HSET', KEYS[2], id, fmt(held) .. ':' .. fmt(now + lease_ttl))
    redis.call('PEXPIRE', KEYS[2], keep)
  else
    redis.call('HDEL', KEYS[2], id)
  end
end

-- What this replica charged leaves its lease for the shared "charged since the fetch".
local settled = redis.call('HINCRBY', KEYS[1], 'settled', fmt(report))
own = math.max(own - report, 0)
if mode == 'yes' then
  redis.call('HSET', KEYS[1], 'fetched', ARGV[7], 'sub', ARGV[8], 'mark', ARGV[9],
    'at', fmt(now), 'fetching', '0')
elseif mode == 'failed' then
  redis.call('HSET', KEYS[1], 'fetching', '0')
end
redis.call('PEXPIRE', KEYS[1], keep)
local b = redis.call('HMGET', KEYS[1], 'fetched', 'sub', 'mark', 'at', 'fetching')
local fetched, sub, mark, at = tonumber(b[1]), b[2], tonumber(b[3]) or 0, tonumber(b[4]) or 0
local fetching = tonumber(b[5]) or 0

-- One replica fetches the backend balance per TTL; the others decide on the last one
-- meanwhile (a payer nobody has fetched yet is fetched by whoever asks).
local function ask_fetch()
  redis.call('HSET', KEYS[1], 'fetching', fmt(now + 5000))
  put_lease(own)
  return {'fetch', fmt(own), fmt(settled)}
end
if mode == 'no' then
  if not fetched then
    return ask_fetch()
  end
  if (ARGV[10] == '1' or now - at >= tonumber(ARGV[11])) and fetching <= now then
    return ask_fetch()
  end
elseif mode == 'failed' then
  local stale = tonumber(ARGV[13])
  local age = now - at
  if not fetched or not (age < tonumber(ARGV[11]) or (stale >= 0 and age <= stale)) then
    put_lease(own)
    return {'unavailable', fmt(own), '0'}
  end
end

if sub ~= '1' then
  put_lease(reserved)
  return {'not_subscriber', fmt(reserved), '0'}
end
local available = fetched - (settled - mark) - others
local need = reserved + amount
if available >= need then
  -- Near the end of the balance the extra shrinks to nothing: credits are then leased
  -- request by request and none sits on a replica while another refuses the caller.
  local grant = math.min(extra, math.floor((available - need) / (2 * (n + 1))))
  put_lease(need + grant)
  return {'granted', fmt(need + grant), fmt(available)}
end
if mode == 'no' and now - at >= tonumber(ARGV[12]) and fetching <= now then
  return ask_fetch()
end
put_lease(reserved)
return {'insufficient', fmt(reserved), fmt(math.max(available, 0))}
