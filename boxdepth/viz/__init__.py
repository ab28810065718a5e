"""Every picture boxdepth draws, with Pillow and numpy.

    draw.py        primitives: colour maps, instance overlays, titled panels, note tiles, PNG
    panels.py      `boxdepth viz`: image | pseudo depth | affinities | masks | instance depth
    pseudo.py      the self-distillation pseudo-mask tile (teacher matches of GT boxes)
    demo_panel.py  the demo's ground truth vs each variant's masks

The dependency order is draw <- pseudo <- panels; demo_panel uses draw only.
"""
