// Tiny static programs packed into local OCI images by scripts/kube/node.sh:
// pause (the pod sandbox: no registry can provide registry.k8s.io/pause here)
// and echo (a test server for checking a node). Standard library only.
module hermes.local/kube/images

go 1.26.0
