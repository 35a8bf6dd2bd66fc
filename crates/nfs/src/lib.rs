//! NFS host provisioning: probe the host, plan the steps, run them; the NFS PersistentVolumes.
