# What ct-supervise itself needs, on the token consul-template runs with
# (`exec` gets consul-template's token and records it for the worker):
#
#   consul acl policy create -name ct-supervise -rules @ct-supervise.hcl

# Sessions for the locks and semaphores, on this node. Per node instead:
#   session "web-1" { policy = "write" }
session_prefix "" {
  policy = "write"
}

# The lock and semaphore keys, under the default prefix ct-supervise/<name>.
# Add a key_prefix for every -prefix your declarations set.
key_prefix "ct-supervise/" {
  policy = "write"
}
