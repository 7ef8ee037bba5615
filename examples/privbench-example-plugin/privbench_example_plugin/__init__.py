"""An example privbench plugin: one defense (``blur``) and one attack (``histogram-reid``).

Install it beside privbench (``pip install -e examples/privbench-example-plugin``); privbench
loads both through their entry points, with their config sections (``blur.sigma_mm``,
``attack.histogram_reid.bins``).
"""
