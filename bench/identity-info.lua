-- wrk script for bench/identity.sh: GET /_matrix/identity/api/v1/info for the addresses of
-- DATA/info-addresses.txt (half bound), taken in turn. Usage: wrk ... -s identity-info.lua URL -- DATA
local paths = {}
local next_path = 1

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

function init(args)
  local file = assert(io.open(args[1] .. "/info-addresses.txt", "r"))
  for line in file:lines() do
    if line:match("%S") then
      paths[#paths + 1] = "/_matrix/identity/api/v1/info?medium=email&address=" .. escape(line)
    end
  end
  file:close()
  next_path = math.random(#paths)
end

function request()
  local path = paths[next_path]
  next_path = next_path % #paths + 1
  return wrk.format("GET", path)
end
