from bioplaus.cli import main

main()
