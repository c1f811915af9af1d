"""Example user code for hobench's pipeline: an optimizer of one's own, registered from params
(profiles/ci.yaml registers :class:`examples.sign_sgd.SignSGD` as ``sign_sgd``)."""
