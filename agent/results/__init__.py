"""What a turn's final answer becomes: inline text, or an object in Cloud Storage behind
a V4 signed URL (the offload policy, the bucket, signing, IAM signBlob).

Imports ``agent.base`` only.
"""
