-- wrk script for bench/identity.sh: POST /_matrix/identity/v2/lookup with the bodies of
-- DATA/lookup-bodies.json (one JSON body per line: 1,000 sha256 hashes, half bound), taken in
-- turn. Usage: wrk ... -s identity-lookup.lua URL -- DATA TOKEN
local bodies = {}
local next_body = 1
local token = ""

function init(args)
  local data = args[1]
  token = args[2]
  local file = assert(io.open(data .. "/lookup-bodies.json", "r"))
  for line in file:lines() do
    if line:match("%S") then
      bodies[#bodies + 1] = line
    end
  end
  file:close()
  -- Threads start at different bodies.
  next_body = math.random(#bodies)
end

function request()
  local body = bodies[next_body]
  next_body = next_body % #bodies + 1
  return wrk.format("POST", "/_matrix/identity/v2/lookup", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }, body)
end
