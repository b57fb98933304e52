# /etc/consul-template.d/haproxy.hcl
#
# Renders haproxy's configuration from the Consul catalog; ct-supervise
# reloads haproxy on one node at a time, fleet-wide.

consul {
  address = "127.0.0.1:8500"
  # token = "..."  or CONSUL_HTTP_TOKEN in consul-template's environment
}

template {
  source      = "/etc/consul-template.d/haproxy/haproxy.cfg.ctmpl"
  destination = "/etc/haproxy/haproxy.cfg"
  command     = "ct-supervise exec haproxy"
}
