"""Formats of other tools that runs leave and enter by: diffusers folders (`unet2d` maps our U-Net onto
diffusers' UNet2DModel; `diffusers_folder` reads and writes the folder, its schedulers and its model
card). Nothing here imports diffusers: writing and reading its files needs only JSON and safetensors.
"""
