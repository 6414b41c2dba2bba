"""EchoMimicV3 in pure torch: audio-driven talking-human video from an image, audio and a prompt.

Independent of ComfyUI; the node pack in ``nodes/`` and the trainer in ``training/`` build on it.
"""

__version__ = "0.1.0"
