"""Test set-up: 8 fake CPU devices, configured before JAX initialises."""

import os

# Must run before the first `import jax` anywhere in the test session: XLA
# reads the flag once, when the CPU backend starts.
os.environ['XLA_FLAGS'] = ' '.join(
    [os.environ.get('XLA_FLAGS', ''),
     '--xla_force_host_platform_device_count=8']).strip()
os.environ['JAX_PLATFORMS'] = 'cpu'
