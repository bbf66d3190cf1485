-- Variant (b): the egress leg's header rules as an in-process Lua filter, the in-process limit to compare with.
-- Same allowlist, LiteLLM headers, credential priority (request's own x-api-key, then authorization) and beta
-- handling as ext_proc/rules.py; no seal (Lua has no AEAD here), so the handoff header is only removed.
local allowed = {
  ["content-type"] = true, ["accept"] = true, ["accept-encoding"] = true, ["user-agent"] = true,
  ["anthropic-version"] = true, ["anthropic-beta"] = true, ["anthropic-dangerous-direct-browser-access"] = true,
  ["x-app"] = true, ["x-claude-code-session-id"] = true, ["traceparent"] = true, ["tracestate"] = true,
  ["x-request-id"] = true, ["host"] = true, ["content-length"] = true, ["transfer-encoding"] = true,
}
local flag = "oauth-2025-04-20"

local function classify(token)
  if token == nil then return nil end
  token = token:match("^%s*(.-)%s*$")
  if token:sub(1, 10) == "sk-ant-oat" then return "oauth", token end
  if token:sub(1, 7) == "sk-ant-" then return "key", token end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local kind, token = classify(headers:get("x-api-key"))
  if kind == nil then
    local auth = headers:get("authorization")
    if auth ~= nil then
      local scheme, rest = auth:match("^%s*(%S+)%s+(.-)%s*$")
      if scheme ~= nil and scheme:lower() == "bearer" then kind, token = classify(rest) end
    end
  end
  local remove = {}
  for name, _ in pairs(headers) do
    if name:sub(1, 1) ~= ":" and not allowed[name] and name:sub(1, 12) ~= "x-stainless-" then
      remove[#remove + 1] = name
    end
  end
  for _, name in ipairs(remove) do headers:remove(name) end
  local beta = headers:get("anthropic-beta") or ""
  local flags, seen = {}, {}
  for part in beta:gmatch("[^,]+") do
    part = part:match("^%s*(.-)%s*$")
    if part ~= "" and not seen[part] and (kind == "oauth" or part ~= flag) then
      flags[#flags + 1] = part; seen[part] = true
    end
  end
  if kind == "oauth" and not seen[flag] then flags[#flags + 1] = flag end
  if #flags > 0 then headers:replace("anthropic-beta", table.concat(flags, ",")) else headers:remove("anthropic-beta") end
  if kind == "oauth" then headers:replace("authorization", "Bearer " .. token) end
  if kind == "key" then headers:replace("x-api-key", token) end
end
