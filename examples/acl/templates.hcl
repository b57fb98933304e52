# What the example templates read, on the same token (consul-template needs
# read access to everything a template renders, as always):
#
#   consul acl policy create -name ct-templates -rules @templates.hcl

# {{ service "app" }}: the service and the nodes it runs on.
service "app" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}

# {{ key "ops/supervise/nginx" }} (consul-kv) and config/myapp/ (systemd-app).
key "ops/supervise/nginx" {
  policy = "read"
}
key_prefix "config/myapp/" {
  policy = "read"
}
