# /etc/consul-template.d/nginx.hcl
#
# The same nginx reload, with its declaration kept in Consul KV under
# ops/supervise/nginx: operators change the rollout policy with
# `consul kv put`, without touching templates or nodes.

consul {
  address = "127.0.0.1:8500"
  # token = "..."  or CONSUL_HTTP_TOKEN in consul-template's environment
}

template {
  source      = "/etc/consul-template.d/nginx/upstreams.conf.ctmpl"
  destination = "/etc/nginx/conf.d/upstreams.conf"
  # The name spelled out: a value too malformed to read its name from
  # still runs the last good declaration.
  command     = "ct-supervise exec nginx"
}
