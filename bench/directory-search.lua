-- wrk script for bench/directory-search.sh: POST /_matrix/client/v3/user_directory/search
-- through the client API's Host mapping, with queries from bench/queries/<class>.txt, taken in
-- turn. Usage: wrk ... -s directory-search.lua URL -- CLASS
local queries = {}
local next_query = 1

function init(args)
  local class = args[1] or "1-term"
  local file = assert(io.open("bench/queries/" .. class .. ".txt", "r"))
  for line in file:lines() do
    if line:match("%S") then
      queries[#queries + 1] = line
    end
  end
  file:close()
end

function request()
  local q = queries[next_query]
  next_query = next_query % #queries + 1
  local body = '{"search_term":"' .. q .. '","limit":10}'
  return wrk.format("POST", "/_matrix/client/v3/user_directory/search", {
    ["Host"] = "bench.local",
    ["Authorization"] = "Bearer bench-token",
    ["Content-Type"] = "application/json",
  }, body)
end
