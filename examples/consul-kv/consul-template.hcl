# /etc/consul-template.d/nginx.hcl
#
# The same nginx reload, with its rollout policy kept in Consul KV under
# ops/supervise/nginx: operators change it with `consul kv put`, without
# touching templates or nodes.

consul {
  address = "127.0.0.1:8500"
  # token = "..."  or CONSUL_HTTP_TOKEN in consul-template's environment
}

template {
  source      = "/etc/consul-template.d/nginx/upstreams.conf.ctmpl"
  destination = "/etc/nginx/conf.d/upstreams.conf"
  # The name spelled out: only the named action runs, whatever else this
  # consul-template process declares.
  command     = "ct-supervise exec nginx"
}
