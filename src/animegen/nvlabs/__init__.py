"""Importing NVIDIA's StyleGAN snapshot pickles (NVlabs stylegan2-ada-pytorch and stylegan3):
`unpickle` reads them without executing anything, `networks` rebuilds our generator and
discriminator from what they record. docs/stylegan.md says what is accepted and refused."""
