# /etc/consul-template.d/myapp.hcl
#
# Renders myapp's environment file from Consul KV; ct-supervise restarts
# myapp on one node at a time, fleet-wide.

consul {
  address = "127.0.0.1:8500"
  # token = "..."  or CONSUL_HTTP_TOKEN in consul-template's environment
}

template {
  source      = "/etc/consul-template.d/myapp/myapp.env.ctmpl"
  destination = "/etc/myapp/myapp.env"
  perms       = "0600"
  command     = "ct-supervise exec myapp"
}
