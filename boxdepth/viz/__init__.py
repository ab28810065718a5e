"""Every picture boxdepth draws, with Pillow and numpy.

    draw.py        primitives: colour maps, instance overlays, titled panels, note tiles, PNG
    panels.py      `boxdepth viz`: image | pseudo depth | affinities | masks | instance depth
    pseudo.py      the self-distillation pseudo-mask tile (teacher matches of GT boxes)
    demo_panel.py  the demo's ground truth vs each variant's masks
    contact_sheet.py  crops with box, mask and caption in a grid (`boxdepth qa`)

The dependency order is draw <- pseudo <- panels; demo_panel and contact_sheet use draw only.
"""
