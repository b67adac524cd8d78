"""Federation: dvlad daemons on several servers run one job together (docs/federation.md).

``torch.distributed`` is the data plane; these modules are the control plane: the cluster secret
(:mod:`.secret`), signed peer requests (:mod:`.signing`, :mod:`.client`), heartbeats and the peer
table (:mod:`.peers`, :mod:`.heartbeat`), leases on a peer's GPUs and CPU slots (:mod:`.leases`),
node parts a peer runs for a coordinator (:mod:`.parts`), the coordinator of a multi-node job
(:mod:`.coordinator`, its records in :mod:`.records`), and the ``/v1/fed`` routes (:mod:`.routes`).
"""
