"""drpose.render: PSHuman's camera rig, projection and condition maps (see cameras.py)."""
