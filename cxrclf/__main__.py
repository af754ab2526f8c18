from cxrclf.cli import main

main()
