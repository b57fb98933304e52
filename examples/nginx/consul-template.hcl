# /etc/consul-template.d/nginx.hcl
#
# Renders nginx's upstreams from the Consul catalog; ct-supervise reloads
# nginx on at most 2 nodes at a time, fleet-wide.

consul {
  address = "127.0.0.1:8500"
  # token = "..."  or CONSUL_HTTP_TOKEN in consul-template's environment
}

template {
  source      = "/etc/consul-template.d/nginx/upstreams.conf.ctmpl"
  destination = "/etc/nginx/conf.d/upstreams.conf"
  # Queues the reload and returns in milliseconds; a background worker
  # waits for the lock and runs it.
  command     = "ct-supervise exec nginx"
}
